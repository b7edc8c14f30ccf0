"""Reports for the Secretariat: the CSV export (files, codebook) and the round's statistics."""
