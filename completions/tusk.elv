
set edit:completion:arg-completer[tusk] = { |@words|
    var index = (count $words)
    set index = (- $index 1)

    put (env _CLAP_IFS="\n" _CLAP_COMPLETE_INDEX=(to-string $index) TUSK_COMPLETE="elvish" tusk -- $@words) | to-lines
}

