"""The maths: pure functions over arrays (numpy references, numexpr kernels, optional numba twins).

Nothing here opens a file: calibration frames and flags come in as arguments.
:mod:`arielstream.calibration.engine` decides, once per process, whether the numba
twins are used.
"""
