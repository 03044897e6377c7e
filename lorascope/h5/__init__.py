"""The recording file format (docs/format.md), both ways and without torch: its names and
encodings (``format``), the writer's file with its committed-rows protocol (``file``), resuming
into a fresh copy (``resume``) and the reader behind ``lorascope.open`` (``reader``)."""
