#!/bin/sh
# Prune the node's virtual environment for the image (deploy/node.Dockerfile, build stage):
# what an installed node never runs. Usage: node-slim.sh SITE_PACKAGES
# Removed: pip/setuptools (the image installs nothing at run time), test suites, C headers
# and Cython sources, pyarrow's parts outside Parquet reading and compute (Flight, cloud
# file systems, ORC, Gandiva, CUDA, its C++ test module), numpy's f2py and build helpers,
# every __pycache__ (the Dockerfile compiles afresh only the modules the node imports), and
# the debug symbols of the packages' shared libraries (strip --strip-unneeded: the dynamic symbol
# table that loading and imports use stays).
set -eu
sp=${1:?usage: node-slim.sh SITE_PACKAGES}
cd "$sp"

rm -rf pip pip-* setuptools setuptools-* pkg_resources _distutils_hack distutils-precedence.pth \
    wheel wheel-*
find . -depth -type d \( -name tests -o -name __pycache__ \) -exec rm -rf {} +
find . -type f \( -name '*.pyx' -o -name '*.pxd' -o -name '*.pxi' -o -name '*.h' \
    -o -name '*.hpp' -o -name '*.c' -o -name '*.cc' -o -name '*.cpp' \) -delete

# pyarrow: lib.cpython links libarrow, _compute, _parquet, _dataset, _acero, _substrait, so
# those stay; nothing the node imports needs Flight, S3/GCS/Azure/HDFS, ORC or Gandiva.
rm -rf pyarrow/include pyarrow/includes pyarrow/src pyarrow/interchange pyarrow/cmake \
    pyarrow/_flight.* pyarrow/flight.py pyarrow/libarrow_flight.so* \
    pyarrow/libarrow_python_flight.so* pyarrow/_s3fs.* pyarrow/_gcsfs.* pyarrow/_azurefs.* \
    pyarrow/_hdfs.* pyarrow/_orc.* pyarrow/orc.py pyarrow/_dataset_orc.* pyarrow/gandiva.* \
    pyarrow/_cuda.* pyarrow/cuda.py pyarrow/_pyarrow_cpp_tests.* pyarrow/benchmark.py \
    pyarrow/libarrow_s3.so*
# pyarrow's wheel ships libarrow_python.so three times (no symlinks in wheels): keep one.
for lib in pyarrow/libarrow_python.so pyarrow/libarrow_python.so.*.*.*; do
    [ -f "$lib" ] && [ ! -L "$lib" ] && rm -f "$lib" && ln -s libarrow_python.so.2600 "$lib"
done
for lib in pyarrow/libarrow_python_parquet_encryption.so pyarrow/libarrow_python_parquet_encryption.so.*.*.*; do
    [ -f "$lib" ] && [ ! -L "$lib" ] && rm -f "$lib" \
        && ln -s libarrow_python_parquet_encryption.so.2600 "$lib"
done

rm -rf numpy/f2py numpy/_pyinstaller numpy/doc numpy/distutils numpy/_core/include \
    numpy/_core/lib/npy-pkg-config numpy/_core/lib/pkgconfig numpy/conftest.py
# Not the libraries auditwheel grafted into <package>.libs/: patchelf laid them out in a way
# strip breaks ("ELF load command address/offset not page-aligned" at import).
find . -type f -name '*.so*' ! -path '*.libs/*' -exec strip --strip-unneeded {} +
