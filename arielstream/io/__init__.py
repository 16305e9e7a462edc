"""Files in and out: the signal Parquet reader, calibration and dataset files, the HDF5 store.

Nothing here knows what a calibration step does; the maths in :mod:`arielstream.calibration`
never opens a file.
"""
