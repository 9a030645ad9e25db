// geopref/geopref.hpp — the host-only part of the library in one include.
#pragma once

#include "geopref/config.hpp"
#include "geopref/losses.hpp"
#include "geopref/options.hpp"
#include "geopref/status.hpp"
