"""The background daemon: runs torrents for the command line, controlled over a Unix socket."""
