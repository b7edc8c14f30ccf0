"""capbot bot package."""
