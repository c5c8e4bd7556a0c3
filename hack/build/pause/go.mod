module evaluation-operator/hack/build/pause

go 1.22
