"""capbot handlers package."""
