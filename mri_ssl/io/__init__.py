"""Generic file I/O every layer may use: atomic writes and JSON, and the image readers that loaders and checks share."""
