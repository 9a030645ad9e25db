# Seeded inputs for dev/corpus/compare.sh (plain Python: writes .npy files without numpy).
import struct, random, math
def npy(path, dtype, shape, values):
    fmt = {'<f4':'f','<f8':'d','<i8':'q','<i4':'i','<f2':'e'}[dtype]
    hdr = "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }" % (dtype, ''.join('%d,' % s for s in shape) if len(shape)==1 else ', '.join(str(s) for s in shape))
    hdr += ' ' * (63 - (len(hdr) + 10) % 64) + '\n'
    with open(path, 'wb') as f:
        f.write(b'\x93NUMPY\x01\x00' + struct.pack('<H', len(hdr)) + hdr.encode())
        f.write(struct.pack('<%d%s' % (len(values), fmt), *values))
r = random.Random(7)
S, T, V, H = 6, 5, 37, 8
N = S * T
npy('z32.npy', '<f4', (N, V), [r.gauss(0, 3) for _ in range(N * V)])
npy('z16.npy', '<f2', (N, V), [r.gauss(0, 3) for _ in range(N * V)])
labels = [(-100 if r.random() < 0.2 else r.randrange(V)) for _ in range(N)]
npy('y.npy', '<i8', (N,), labels)
npy('off.npy', '<i8', (S + 1,), [s * T for s in range(S + 1)])
P = S // 2
npy('p.npy', '<f4', (P,), [r.random() for _ in range(P)])
npy('ref.npy', '<f4', (S,), [-10 + r.gauss(0, 1) for _ in range(S)])
npy('w.npy', '<f4', (P,), [0.5 + r.random() for _ in range(P)])
npy('tw.npy', '<f4', (N,), [0.25 + 1.5 * r.random() for _ in range(N)])
npy('h.npy', '<f4', (N, H), [r.gauss(0, 1) for _ in range(N * H)])
npy('wt.npy', '<f4', (V, H), [r.gauss(0, 0.5) for _ in range(V * H)])
npy('b.npy', '<f4', (V,), [r.gauss(0, 0.1) for _ in range(V)])
npy('g.npy', '<f4', (N,), [r.gauss(0, 1) for _ in range(N)])
