// Package v20170312 stands in for Tencent Cloud's VPC SDK, which the Go
// module proxy does not serve. flanneld imports it only for its tencent-vpc
// backend; cnilab's labs never use that backend. Every call fails, so a
// flanneld built with this stub says so instead of misbehaving.
// Written for cnilab; it holds no code of the SDK.
package v20170312

import "errors"

// ErrNotBuilt is what every call returns.
var ErrNotBuilt = errors.New("the tencent-vpc backend is not built into this flanneld (cnilab's build stubs Tencent Cloud's VPC SDK)")

// Filter names a filter of a describe call.
type Filter struct {
	Name   *string
	Values []*string
}

// Route is a route of a VPC route table.
type Route struct {
	DestinationCidrBlock *string
	GatewayType          *string
	GatewayId            *string
	RouteId              *uint64
	RouteType            *string
	Enabled              *bool
}

// RouteTable is a VPC route table.
type RouteTable struct {
	RouteTableId *string
	RouteSet     []*Route
}

// DescribeRouteTablesRequest asks for route tables.
type DescribeRouteTablesRequest struct{ Filters []*Filter }

// DescribeRouteTablesResponse answers it.
type DescribeRouteTablesResponse struct {
	Response *struct{ RouteTableSet []*RouteTable }
}

// DeleteRoutesRequest deletes routes.
type DeleteRoutesRequest struct {
	RouteTableId *string
	Routes       []*Route
}

// CreateRoutesRequest creates routes.
type CreateRoutesRequest struct {
	RouteTableId *string
	Routes       []*Route
}

// Client would talk to the VPC API.
type Client struct{}

// NewClientWithSecretId returns a client whose every call fails.
func NewClientWithSecretId(id, key, region string) (*Client, error) { return &Client{}, ErrNotBuilt }

// NewDescribeRouteTablesRequest returns an empty request.
func NewDescribeRouteTablesRequest() *DescribeRouteTablesRequest { return &DescribeRouteTablesRequest{} }

// NewDeleteRoutesRequest returns an empty request.
func NewDeleteRoutesRequest() *DeleteRoutesRequest { return &DeleteRoutesRequest{} }

// NewCreateRoutesRequest returns an empty request.
func NewCreateRoutesRequest() *CreateRoutesRequest { return &CreateRoutesRequest{} }

// DescribeRouteTables fails.
func (c *Client) DescribeRouteTables(*DescribeRouteTablesRequest) (*DescribeRouteTablesResponse, error) {
	return nil, ErrNotBuilt
}

// DeleteRoutes fails.
func (c *Client) DeleteRoutes(*DeleteRoutesRequest) (*struct{}, error) { return nil, ErrNotBuilt }

// CreateRoutes fails.
func (c *Client) CreateRoutes(*CreateRoutesRequest) (*struct{}, error) { return nil, ErrNotBuilt }
