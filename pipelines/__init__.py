"""End-to-end workflows built on hsk_cache (hsk_cache never imports from here)."""
