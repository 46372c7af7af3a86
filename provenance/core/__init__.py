"""The ground floor: errors, hashing, canonical JSON, files, trees, signing, progress."""
