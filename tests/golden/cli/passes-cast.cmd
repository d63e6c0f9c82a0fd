passes cast
