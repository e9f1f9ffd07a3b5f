"""Data for voltron: video decoding, video-language corpora (Something-Something-v2 layout) and household demos."""
