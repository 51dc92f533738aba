"""Small helpers shared by every stage (atomic file writes, hashing, shared names)."""
