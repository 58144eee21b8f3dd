"""The benchmark's research runs beside the default one: `budget`, `footprint` and `plots`."""
