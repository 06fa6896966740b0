"""Text model parts: the token-embedding adapter."""
