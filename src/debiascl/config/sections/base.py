"""The base of every config section: unknown keys are errors, assignments are validated."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def changed(self, key: str) -> bool:
        """True when ``key`` was given (not left to its default) at a value other than its
        default: a setting the user asked for, not one spelled out at the default."""
        if key not in self.model_fields_set:
            return False
        default = type(self).model_fields[key].get_default(call_default_factory=True)
        return getattr(self, key) != default
