"""The content-addressed store: objects, index, refs, fsck, gc. Knows nothing of logs or records."""
