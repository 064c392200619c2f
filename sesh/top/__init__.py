"""The dashboard: collect -> snapshot -> render; rich is imported only here."""
