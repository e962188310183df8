"""One module per `tsrec <command>` (and DVC stage of the same name): parse, resolve typed configs, call the libraries, write outputs."""
