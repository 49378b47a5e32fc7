"""The REST API: ZStack's VolumeSnapshotGroup API over HTTP (`snapgroup serve`)."""

from snapgroup.rest.app import create_app

__all__ = ["create_app"]
