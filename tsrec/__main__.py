from tsrec.cli import main

raise SystemExit(main())
