"""Counting real block forwards in models that a front end builds itself (in-process runs): the block classes
are patched before the models exist, so the caches attached later wrap the counting forward and a skipped
block is not counted."""

import functools


def count_block_calls(monkeypatch, **groups) -> dict[str, int]:
    """groups: name -> a block class or a tuple of them. Returns {name: calls}, updated as the blocks run."""
    calls = dict.fromkeys(groups, 0)
    for name, classes in groups.items():
        for cls in classes if isinstance(classes, tuple) else (classes,):
            original = cls.forward

            @functools.wraps(original)  # keeps the signature that diffusers' block metadata reads
            def counting(self, *args, _original=original, _name=name, **kwargs):
                calls[_name] += 1
                return _original(self, *args, **kwargs)

            monkeypatch.setattr(cls, "forward", counting)
    return calls
