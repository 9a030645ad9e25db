"""The TRL-style training example runs and agrees with plain PyTorch at every step."""
import os
import subprocess
import sys

EXAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples",
                       "train_tiny_lm.py")


def test_train_tiny_lm_agrees_with_plain_pytorch():
    for loss in ("gdpo", "sigmoid"):
        r = subprocess.run([sys.executable, EXAMPLE, "--steps", "3", "--loss", loss],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "3 of 3 steps agreed" in r.stdout, r.stdout
