"""The serving tier's own copy of users' lifelong histories, for ``rank_by_user``."""
