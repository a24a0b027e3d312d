"""Errors that stop a run (the command line exits 1 with the message): a busy run folder, a
checkpoint that could not be saved, a run whose steps stopped being finite."""

from __future__ import annotations


class TrainingError(RuntimeError):
    """A run that cannot start or go on; the message says why and what was kept."""


class RunFolderBusy(TrainingError):
    """Another trainer holds the run folder's lock."""


class CheckpointSaveError(TrainingError):
    """A checkpoint could not be written (disk full, permissions, ...)."""


class NonFiniteTrainingError(TrainingError):
    """Too many consecutive steps with non-finite gradients, or a state that is not finite."""
