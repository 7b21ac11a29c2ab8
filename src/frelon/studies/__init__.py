"""Each study's own logic (what it measures and how it plots it); evaluate/ keeps the metrics."""
