"""The trace store: every solve's tree, decisions and result, in SQLite or any SQLAlchemy database."""

from ttc.storage.records import RunSummary, TraceRecord, TraceSummary
from ttc.storage.store import TraceStore

__all__ = ["RunSummary", "TraceRecord", "TraceStore", "TraceSummary"]
