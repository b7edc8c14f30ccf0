"""Message catalogs of the six UN languages (YAML) and the UN glossary, shipped as package data."""
