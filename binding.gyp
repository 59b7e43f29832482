{
  "targets": [
    {
      "target_name": "fileops",
      "sources": ["native/fileops.c"],
      "cflags": ["-O2", "-Wall"]
    }
  ]
}
