"""Getting a dataset's files: from upstream, a mirror (a directory or http(s) URL) or the OS's copy,
within deadlines and byte, member and redirect bounds, verified by md5 before they are kept
(`fetch.download`), and what to do next when they cannot be had (`hints`)."""
