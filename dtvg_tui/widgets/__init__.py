"""The dashboard's own widgets, one module per widget."""
