{
  "targets": [
    {
      "target_name": "fileops",
      "sources": ["fileops.c"],
      "cflags": ["-O2", "-Wall"]
    }
  ]
}
