"""Container images without Docker: `make images` (`python -m images build`).

A Debian base made with debootstrap, the Python dependencies installed as wheels for the
image's Python, the project's sources, and the image config read from the Dockerfiles, packed
into docker-archive tarballs that `ctr images import` and `skopeo copy docker-archive:` accept.
"""
