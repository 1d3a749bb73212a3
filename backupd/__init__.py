"""backupd: stream database dumps straight into S3-compatible storage."""

__version__ = "0.1.0"
