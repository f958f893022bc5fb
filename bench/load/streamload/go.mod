module tollgate.dev/bench/streamload

go 1.26
