"""Storage: one schema on SQLite or PostgreSQL, behind the Repository interface."""
