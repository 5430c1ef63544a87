// Every subcommand, imported for its registration side effect. Add one line per command module.
import "./enroll.js";
