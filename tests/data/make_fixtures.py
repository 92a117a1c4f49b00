"""Write the small fixtures in tests/data/ (run from the repo root: ``python tests/data/make_fixtures.py``).

They have the formats of the original team's reference files, which are not shipped, so the checks
that read those formats run in every checkout:

- ``argus_keys_tiny.md``: the state-dict keys and shapes the original's networks have, for tiny
  configurations, in the format of ``argus_checkpoint_format.md`` (a ``## Arch(kwargs)`` title,
  then ``key (shape)`` lines in a fenced block). ``original_keys`` derives them from the original's
  module naming (``conv1.conv1.0``, ``skip1.bn``, ``attention.ca.fc1``, ``fc.5``, ``scale.fc1``,
  ``relu1``...) and the shape formulas in DESIGN.md, independently of ``freesound.models``;
  ``tests/test_models.py`` checks that it reproduces the full listing whenever the reference file
  is present.
- ``corrections_tiny.json`` and ``noisy_corrections_tiny.json``: corrections files (``fname`` ->
  comma-separated labels or ``"remove"``, two-space indent), with made-up clip names.

``tests/test_models.py`` checks that the committed files equal what this script writes.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: The tiny configurations listed in argus_keys_tiny.md (few parameters, every module present).
TINY_CONFIGS = [
    ("AuxSkipAttention", dict(num_classes=3, base_size=2, dropout=0.4, ratio=4, kernel_size=3, last_filters=2,
                              last_fc=3)),
    ("FCNet", dict(in_channels=12, num_classes=3, base_size=4, reduction_scale=3)),
]

CORRECTIONS = {
    "0a1b2c3d.wav": "Bark",
    "1b2c3d4e.wav": "remove",
    "2c3d4e5f.wav": "Meow,Purr",
    "3d4e5f60.wav": "remove",
    "4e5f6071.wav": "Walk_and_footsteps,Traffic_noise_and_roadway_noise,Car_passing_by",
}
NOISY_CORRECTIONS = {
    "a0000001.wav": "remove",
    "a0000002.wav": "Accelerating_and_revving_and_vroom",
    "a0000003.wav": "remove",
    "a0000004.wav": "remove",
    "a0000005.wav": "Zipper_(clothing)",
    "a0000006.wav": "Bass_drum,Cricket",
}


def _batch_norm(prefix: str, channels: int) -> list:
    return [(f"{prefix}.weight", (channels,)), (f"{prefix}.bias", (channels,)),
            (f"{prefix}.running_mean", (channels,)), (f"{prefix}.running_var", (channels,)),
            (f"{prefix}.num_batches_tracked", ())]


def _conv_block(prefix: str, c_in: int, c_out: int) -> list:
    # two (3x3 conv without bias, batch norm) pairs, as Sequential children 0 and 1
    return ([(f"{prefix}.conv1.0.weight", (c_out, c_in, 3, 3))] + _batch_norm(f"{prefix}.conv1.1", c_out)
            + [(f"{prefix}.conv2.0.weight", (c_out, c_out, 3, 3))] + _batch_norm(f"{prefix}.conv2.1", c_out))


def _skip_block(prefix: str, c_in: int, c_out: int) -> list:
    return [(f"{prefix}.conv.weight", (c_out, c_in, 3, 3))] + _batch_norm(f"{prefix}.bn", c_out)


def _head(prefix: str, c_in: int, hidden: int, num_classes: int) -> list:
    # Sequential(Dropout, Linear, PReLU, BatchNorm1d, Dropout, Linear): children 1, 2, 3 and 5
    return ([(f"{prefix}.1.weight", (hidden, c_in)), (f"{prefix}.1.bias", (hidden,)), (f"{prefix}.2.weight", (1,))]
            + _batch_norm(f"{prefix}.3", hidden) + [(f"{prefix}.5.weight", (num_classes, hidden)),
                                                     (f"{prefix}.5.bias", (num_classes,))])


def original_keys(arch: str, kwargs: dict) -> list:
    """The original network's ``(state-dict key, shape)`` pairs, in order, for ``arch(**kwargs)``."""
    if arch == "AuxSkipAttention":
        b, classes = kwargs["base_size"], kwargs["num_classes"]
        keys = []
        for k, (c_in, c_out) in enumerate([(3, b), (b, 2 * b), (2 * b, 4 * b), (4 * b, 8 * b)], start=1):
            keys += _conv_block(f"conv{k}", c_in, c_out)
            if k < 4:
                keys += _skip_block(f"skip{k}", c_out, 8 * b)
        merged = 32 * b
        keys += [("attention.ca.fc1.weight", (merged // kwargs["ratio"], merged, 1, 1)),
                 ("attention.ca.fc2.weight", (merged, merged // kwargs["ratio"], 1, 1)),
                 ("attention.sa.conv1.weight", (1, 2, kwargs["kernel_size"], kwargs["kernel_size"]))]
        keys += _skip_block("merge", merged, b * kwargs["last_filters"])
        keys += _head("fc", b * kwargs["last_filters"], b * kwargs["last_fc"], classes)
        for k in (1, 2, 3):
            keys += _head(f"aux{k}.fc", 8 * b, b * kwargs["last_fc"], classes)
        return keys
    if arch == "FCNet":
        c_in, base = kwargs["in_channels"], kwargs["base_size"]
        reduced = c_in // kwargs["reduction_scale"]
        return [("scale.fc1.weight", (reduced, c_in)), ("scale.fc1.bias", (reduced,)),
                ("scale.fc2.weight", (c_in, reduced)), ("scale.fc2.bias", (c_in,)),
                ("linear1.weight", (2 * base, c_in)), ("linear1.bias", (2 * base,)), ("relu1.weight", (1,)),
                ("linear2.weight", (base, 2 * base)), ("linear2.bias", (base,)), ("relu2.weight", (1,)),
                ("fc.weight", (kwargs["num_classes"], base)), ("fc.bias", (kwargs["num_classes"],))]
    raise ValueError(f"no key listing for {arch!r}")


def listing_markdown(configs) -> str:
    """Sections in the reference file's format for ``(arch, kwargs)`` pairs."""
    parts = ["# State-dict keys and shapes of the original networks, tiny configurations\n",
             "Written by tests/data/make_fixtures.py in the format of argus_checkpoint_format.md.\n"]
    for arch, kwargs in configs:
        title = ", ".join(f"{key}={value}" for key, value in kwargs.items())
        lines = [f"{key} ({', '.join(map(str, shape))}{',' if len(shape) == 1 else ''})"
                 for key, shape in original_keys(arch, kwargs)]
        parts.append(f"## {arch}({title})\n\n```\n" + "\n".join(lines) + "\n```\n")
    return "\n".join(parts)


def fixtures() -> dict:
    """File name -> text of every fixture."""
    return {
        "argus_keys_tiny.md": listing_markdown(TINY_CONFIGS),
        "corrections_tiny.json": json.dumps(CORRECTIONS, indent=2) + "\n",
        "noisy_corrections_tiny.json": json.dumps(NOISY_CORRECTIONS, indent=2) + "\n",
    }


if __name__ == "__main__":
    for name, text in fixtures().items():
        (HERE / name).write_text(text)
        print(f"wrote {HERE / name}")
