"""What both engines say about a finished conversion: one line per split, and the refusal of one
that leaves nothing to train on."""

from __future__ import annotations

import sys

from pipelines.common import parquet_input as pi


def print_summary(manifest: dict) -> None:
    """One line per split on stderr: samples written, rejected by reason, bytes per sample."""
    for split, summary in manifest["splits"].items():
        print(
            f"{split}: {summary['samples_written']} of {summary['samples_in']} samples written "
            f"({summary['rejected']} rejected), {summary['bytes_per_sample']} bytes/sample",
            file=sys.stderr,
        )


class EmptyTrainingSplit(pi.InputError):
    """No training sample survived the conversion; ``manifest`` says where each one went."""

    def __init__(self, message: str, manifest: dict):
        super().__init__(message)
        self.manifest = manifest


def check_training_samples(input_dir: str, manifest: dict, work: str) -> None:
    """Fails a conversion that leaves nothing to train on, before its manifest is written (no
    manifest: not a usable dataset); both engines call it."""
    train = manifest["splits"]["train"]
    if train["samples_written"]:
        return
    reasons = ", ".join(f"{n} {reason}" for reason, n in train["rejected"].items() if n)
    raise EmptyTrainingSplit(
        f"{input_dir}: no training sample was written ({train['samples_in']} in"
        f"{'; rejected: ' + reasons if reasons else ''}); check that train_samples and "
        f"train_user_features share user IDs (129_1). Work files kept in {work}.",
        manifest,
    )
