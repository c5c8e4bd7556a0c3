"""Local-cluster tooling for development and tests: the control plane (`devcluster.cluster`),
the toolchain the Makefile builds (`devcluster.tools`)."""
