module vmgroup-operator/hack/tools/pause

go 1.26
