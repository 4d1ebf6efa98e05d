complete --keep-order --exclusive --command tusk --arguments "(TUSK_COMPLETE=fish tusk -- (commandline --current-process --tokenize --cut-at-cursor) (commandline --current-token))"
