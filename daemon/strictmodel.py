"""The one base of every file-backed settings model (settings.yaml, subjects, policies,
scenarios): an unknown key is an error, so a misspelt setting is reported with its file
and line instead of silently falling back to its default; a loaded model is immutable, so
a hot reload swaps whole objects and never edits one in use."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
