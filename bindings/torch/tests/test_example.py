"""The TRL-style training example runs and agrees with plain PyTorch at every step
(from the logits, and from the hidden states and LM head: fused linear)."""
import importlib.util
import os
import sys

EXAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples",
                       "train_tiny_lm.py")


def test_train_tiny_lm_agrees_with_plain_pytorch(monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("train_tiny_lm", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    for loss, fused in (("gdpo", False), ("sigmoid", False), ("gdpo", True)):
        argv = [EXAMPLE, "--steps", "3", "--loss", loss] + (["--fused-linear"] if fused else [])
        monkeypatch.setattr(sys, "argv", argv)
        assert example.main() == 0
        assert "3 of 3 steps agreed" in capsys.readouterr().out
