"""2D detectors: the interface, the oracle and the project's own network (``network``), the
registry with precomputed detections and MediaPipe (``registry``), and the cross-view
consistency check of a finished run (``consistency``)."""
