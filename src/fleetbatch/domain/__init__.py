"""Pure domain code: identifiers, states, validation, errors. No I/O, no frameworks."""
