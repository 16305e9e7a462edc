"""What users take away from a calibrated file: reading it back, light curves, exports, quicklook, summary."""
