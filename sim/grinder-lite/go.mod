module grinder-lite

go 1.22
