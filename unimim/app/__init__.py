"""The composition root: the only code that knows both the library (unimim) and its plugins (modalities)."""
